"""The ``asyncmail`` command: the operator's chores without the web process.

main      argument parsing and dispatch to a command; exit codes
service   init, check-config, token, status, run-now, suspend, activate, cleanup
accounts  SMTP accounts
messages  send (flags, JSON, .eml) and list/show/delete messages
stack     the supervisord launcher: supervisord, ctl, shutdown
eml       message payloads from flags and .eml files
output    tables for people, JSON for scripts, exit codes
"""
