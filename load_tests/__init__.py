"""Load tests and the benchmark: tools that run beside a server, never inside it.

Nothing here is part of the installed `cnnserve` distribution (and so none of it is in the server's container
image). `make` puts the source checkout on the development venv's path, so `load_tests.bench` backs
`cnnserve bench` and `make bench`; the scripts (`run_locust.py`, `soak.py`) run as `python -m load_tests.NAME`
or as files from the checkout.
"""
