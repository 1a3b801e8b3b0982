# Writes an fxpkcs11.cfg for slot 0 of the PKCS#11 module, with mutual TLS
# to keyhold-hsm addresses on 127.0.0.1. Shared by scripts/demo, the tests
# (tests/integration/p11_lib.sh) and bench/run.
#
# kh_write_fxpkcs11_cfg FILE WORKDIR LOGFILE PORT...
#   WORKDIR  a reference set-up's work dir (ca.pem, client.pem, client.key)
#   LOGFILE  the module's log file
#   PORT     one <ADDRESS> per Excrypt port
# The token label is $KH_P11_LABEL (default "Keyhold").
kh_write_fxpkcs11_cfg() {
  local f=$1 w=$2 log=$3 port; shift 3
  {
    echo "<FXPKCS11>"
    echo "  <LOG-LEVEL> WARN </LOG-LEVEL>"
    echo "  <LOG-FILE> $log </LOG-FILE>"
    echo "  <HSM>"
    echo "    <SLOT> 0 </SLOT>"
    echo "    <LABEL> ${KH_P11_LABEL:-Keyhold} </LABEL>"
    echo "    <CRYPTO-OPR> pkcs11user </CRYPTO-OPR>"
    for port in "$@"; do echo "    <ADDRESS> 127.0.0.1:$port </ADDRESS>"; done
    echo "    <PROD-TLS-ENABLED> YES </PROD-TLS-ENABLED>"
    echo "    <PROD-TLS-CA> $w/ca.pem </PROD-TLS-CA>"
    echo "    <PROD-TLS-CERT> $w/client.pem </PROD-TLS-CERT>"
    echo "    <PROD-TLS-KEY> $w/client.key </PROD-TLS-KEY>"
    echo "    <FX-LOAD-BALANCE> YES </FX-LOAD-BALANCE>"
    echo "    <CONNECT-TIMEOUT> 5 </CONNECT-TIMEOUT>"
    echo "    <REQUEST-TIMEOUT> 60 </REQUEST-TIMEOUT>"
    echo "  </HSM>"
    echo "</FXPKCS11>"
  } >"$f"
}
