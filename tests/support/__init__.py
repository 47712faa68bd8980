"""What the tests share: real peers, process helpers, fixtures and one set of factories.

    fixtures.py     var_dir, make_config, config, conn: a private var dir and a migrated database
    factories.py    message(), account(), Clock and T0: the one way tests make their data
    db.py           enqueue through intake, rows and attempts read back, outcomes written
    dispatchers.py  make_dispatcher (in process, on a fixed clock) and dispatcher processes
    ratelimit.py    send times checked against rate-limit windows
    smtp.py         aiosmtpd peers, Behavior, the silent server, a TLS certificate
    upstream.py     the proxy_sync upstream (HTTP) that delivery reports go to
    s3.py           moto's S3 server, for attachments
    imap.py         Dovecot (the bounce mailbox), the DSN fixtures, a link-cutting proxy
    procs.py        free_port, service processes started and stopped, their state, wait_for
    stack.py        the whole supervisord stack
    web.py          the API under the real gunicorn (etc/gunicorn.conf.py)
    slow.py         hostile HTTP clients (slow heads, slow and stalled bodies)
    openapi.py      answers checked against /openapi.json

tests/conftest.py loads the fixture modules with ``pytest_plugins``, so a test takes
``smtp_server`` or ``conn`` as a parameter and imports only helpers from here; no test module
imports another.  bench/ uses the same peers and process helpers.
"""
