"""Steady Excrypt traffic through a guardian group's endpoint, so the web
console's plots have something to show (tests/integration/test_console.sh).

    console_traffic.py PORT CA CERT KEY USER PASSWORD_FILE STOP_FILE

Logs in as USER on a few connections and sends about 30 requests a second, reconnecting when the
endpoint is not there yet or a member went away; stops when STOP_FILE
exists, its directory is gone, or after 15 minutes.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from excrypt import Connection  # noqa: E402

CONNS = 6


def main():
    port, ca, cert, key, user, pwfile, stop = sys.argv[1:8]
    with open(pwfile) as f:
        password = f.readline().rstrip("\n")
    deadline = time.time() + 900
    done = lambda: os.path.exists(stop) or not os.path.isdir(os.path.dirname(stop)) \
        or time.time() > deadline
    while not done():
        conns = []
        try:
            # several connections, so that balancing spreads them over the
            # members that serve (a connection stays on one member)
            for _ in range(CONNS):
                c = Connection("127.0.0.1", int(port), ca=ca, cert=cert, key=key)
                conns.append(c)
                c.login(user, password)
            while not done():
                for c in conns:
                    c.call("RAND", NB=16)
                time.sleep(0.2)
        except Exception:
            time.sleep(0.5)
        finally:
            for c in conns:
                try:
                    c.close()
                except Exception:
                    pass


if __name__ == "__main__":
    main()
