#!/usr/bin/env bash
# The CLI used interactively at a real terminal (tmux): a prompt, passwords
# read without echo (never shown on the screen), the forced password change
# asked twice, line editing history (Up recalls the last command).
source "$(dirname "$0")/lib.sh"
command -v tmux >/dev/null || fail "tmux is required (scripts/deps installs it)"

start_hsm I
sess=kh-it-$$
screen() { tmux capture-pane -t "$sess" -p; }
wait_for() { # PATTERN
  for _ in $(seq 1 100); do screen | grep -q -- "$1" && return 0; sleep 0.1; done
  screen >&2; tmux list-sessions >&2 || true; fail "terminal never showed: $1"
}
type_line() { tmux send-keys -t "$sess" -l -- "$1"; tmux send-keys -t "$sess" Enter; }
trap 'rc=$?; tmux kill-session -t "$sess" 2>/dev/null || true; (exit $rc); kh_cleanup' EXIT

HOME=$T tmux new-session -d -s "$sess" -x 160 -y 50 \
  "HOME=$T ASAN_OPTIONS=$ASAN_OPTIONS $CLI_BIN --console $T/I/console.sock"
wait_for "keyhold>"
type_line "login --user Admin1"
wait_for "Password for Admin1"
type_line "safest"
wait_for "New password"
type_line "Interactive-Secret-1"
wait_for "gain\|Repeat\|onfirm"
type_line "Interactive-Secret-1"
wait_for "1 of 2 logins"
type_line "echo hello-terminal"
wait_for "Echo: *hello-terminal"
tmux send-keys -t "$sess" Up
sleep 0.3
[ "$(screen | grep -c 'keyhold> echo hello-terminal')" -ge 2 ] || { screen >&2; fail "history did not recall the last command"; }
tmux send-keys -t "$sess" C-u
out=$(screen)
type_line "quit"
for _ in $(seq 1 50); do tmux has-session -t "$sess" 2>/dev/null || break; sleep 0.1; done
tmux has-session -t "$sess" 2>/dev/null && fail "quit did not end the CLI"
grep -q "safest\|Interactive-Secret-1" <<<"$out" && fail "a password was echoed on the terminal"
if [ -f "$T/.keyhold_history" ]; then
  grep -q "Interactive-Secret\|safest" "$T/.keyhold_history" && fail "a password reached the history file"
fi
echo "interactive: all checks passed"
