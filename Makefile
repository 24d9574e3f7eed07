# Thin wrapper around tasks.py (which needs only Python and pip).
.PHONY: demo test test-fast figures bench install
demo:      ; python3 tasks.py demo
test:      ; python3 tasks.py test
test-fast: ; python3 tasks.py test -m "not slow"
figures:   ; python3 tasks.py figures
bench:     ; python3 tasks.py bench
install:   ; python3 tasks.py install
