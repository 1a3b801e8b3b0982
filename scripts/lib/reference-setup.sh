# The reference's HSM set-up, run through the keyhold CLI on a fresh daemon's
# console. Shared by scripts/demo and tests/integration/test_reference_setup.sh.
#
# kh_reference_setup CLI CONSOLE WORKDIR
#   CLI      path of the keyhold binary
#   CONSOLE  the daemon's console socket
#   WORKDIR  a private directory (0700) for secrets, fragments and certificates
# Leaves in WORKDIR: admin1.pw admin2.pw user.pw (identity pkcs11user),
# ca.pem, client.pem + client.key (CN=pkcs11user), pmk/ and bek/ fragment
# files with their passphrases, setup.log (everything the CLI printed).
# The secrets are demo values: a real ceremony types them at a prompt.

kh_put_secret() { (umask 077; printf '%s' "$2" >"$1"); }

KH_APP_COMMANDS="ECHO,PRMD,RAND,HASH,GPKM,GPKS,GPKR,APFP,ASYL,GECC,GPCA,GPGS,GPKA,GPKD,GRSA,LRSA,RPFP,GPKU,GPUK,GPKW,GPWK,ADPK,GHSH,GPSE,GPSD,GPGC,GPMC,GPSR,HMAC,RDPK,ASYS,ASYV,GPSV,RSAS"
KH_TP_COMMANDS="ASYS,ECHO,GPKM,GPKR,GPKS,HASH,PRMD,RAND,STAT,TIME"

kh_reference_setup() {
  local cli=$1 console=$2 w=$3 i
  mkdir -p "$w" && chmod 700 "$w"
  kh_put_secret "$w/default.pw" "safest"
  kh_put_secret "$w/admin1.pw" "Admin1-Secret-7731"
  kh_put_secret "$w/admin2.pw" "Admin2-Secret-4402"
  kh_put_secret "$w/user.pw" "PKCS11-User-Secret-5519"
  # two FTK components held by two custodians
  (umask 077; printf '%s\n%s\n' \
    "0123456789ABCDEFFEDCBA98765432100F1E2D3C4B5A69788796A5B4C3D2E1F0" \
    "1111111111111111222222222222222233333333333333334444444444444444" >"$w/ftk.components")
  for i in 1 2 3; do kh_put_secret "$w/pmk$i.pp" "PMK custodian $i passphrase"; done
  for i in 1 2; do kh_put_secret "$w/bek$i.pp" "BEK custodian $i passphrase"; done
  rm -rf "$w/pmk" "$w/bek"
  mkdir -m 700 "$w/pmk" "$w/bek"

  # One connection: the Administrator role needs both logins (dual control).
  "$cli" --console "$console" -f - >"$w/setup.log" 2>&1 <<EOF || { cat "$w/setup.log" >&2; return 1; }
# Configure the HSM: both default administrators, who must change 'safest'
login --user Admin1 --password-file $w/default.pw --new-password-file $w/admin1.pw
login --user Admin2 --password-file $w/default.pw --new-password-file $w/admin2.pw
status
# Load major keys: FTK from two XOR'd components
majorkey load --ftk --alg AES --bits 256 --parts 2 --component-file $w/ftk.components
# PMK as 2-of-3 fragments: generated and split for three custodians, then
# (as on a second HSM of a cluster) recombined from two of them
majorkey random --pmk --bits 256 -m 2 -n 3 --out $w/pmk --passphrase-file $w/pmk1.pp --passphrase-file $w/pmk2.pp --passphrase-file $w/pmk3.pp
majorkey erase --pmk
majorkey recombine --pmk --fragment $w/pmk/PMK-fragment-1-of-3.khf --fragment $w/pmk/PMK-fragment-3-of-3.khf --passphrase-file $w/pmk1.pp --passphrase-file $w/pmk3.pp
# BEK generated, 2-of-2
majorkey random --bek --bits 256 -m 2 -n 2 --out $w/bek --passphrase-file $w/bek1.pp --passphrase-file $w/bek2.pp
majorkey status
# Transaction Processing (formerly Anonymous): Keys without All Slots, no
# key ranges, only the PKCS #11 communication commands of the reference
role modify --name Anonymous --permissions Keys --key-ranges none --commands $KH_TP_COMMANDS
# The application partition
role add --name "PKCS11 App" --logins-required 1 --ports prod --sources ethernet --dual-factor never --permissions "Keys,Authorized,Import PKI,No Usage Wrap" --key-ranges S:1000-1499,A:1500-1999 --commands $KH_APP_COMMANDS
role show --name "PKCS11 App"
role show --name Anonymous
# Its identity (the <CRYPTO-OPR> of fxpkcs11.cfg)
identity add --name pkcs11user --role "PKCS11 App" --password-file $w/user.pw
# TLS: a CA on the HSM and the HSM's server certificate
tls ca generate --type ec --curve P-256 --cn "Keyhold Demo CA" --out $w/ca.pem
tls server issue --cn keyhold-hsm --san IP:127.0.0.1,DNS:localhost --out $w/server.pem
EOF
  # The client's key and CSR, made with openssl as the reference does
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$w/client.key" -out "$w/client.csr" -subj "/CN=pkcs11user" 2>/dev/null
  "$cli" --console "$console" -f - >>"$w/setup.log" 2>&1 <<EOF || { cat "$w/setup.log" >&2; return 1; }
login --user Admin1 --password-file $w/admin1.pw
login --user Admin2 --password-file $w/admin2.pw
tls sign --csr $w/client.csr --out $w/client.pem --days 30
tls-ports show
EOF
}
