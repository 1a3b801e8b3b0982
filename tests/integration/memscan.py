#!/usr/bin/python3
"""Search a live process's memory for secrets that must not be there.

usage: memscan.py PID NEEDLES_FILE
NEEDLES_FILE holds one secret per line, hex-encoded. Each is searched as raw bytes and as
upper- and lower-case hex (the wire form). Prints every hit with its region
and exits 1 if any was found. Regions larger than 1 GiB (sanitizer shadow
memory) and unreadable ones are skipped; both are reported.
"""
import binascii
import sys


def main():
    pid = int(sys.argv[1])
    needles = []
    with open(sys.argv[2], "rb") as f:
        for line in f.read().splitlines():
            if not line:
                continue
            raw = binascii.unhexlify(line.strip())
            needles.append(raw)
            hx = binascii.hexlify(raw)
            needles.append(hx.upper())
            needles.append(hx.lower())
    hits = 0
    scanned = 0
    skipped = 0
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            perms = parts[1]
            name = parts[5] if len(parts) > 5 else "[anon]"
            if "r" not in perms or name in ("[vvar]", "[vsyscall]"):
                continue
            if hi - lo > (1 << 30):
                skipped += 1
                continue
            try:
                mem.seek(lo)
                data = mem.read(hi - lo)
            except OSError:
                skipped += 1
                continue
            scanned += len(data)
            for n in needles:
                at = data.find(n)
                if at >= 0:
                    hits += 1
                    print(f"FOUND {n[:8]!r}... at {lo + at:#x} in {name} ({perms})")
    print(f"memscan: {scanned // 1024} KiB scanned, {skipped} regions skipped, {hits} hits")
    return 1 if hits else 0


if __name__ == "__main__":
    sys.exit(main())
