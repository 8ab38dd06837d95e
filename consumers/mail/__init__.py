"""Email jobs: Jinja2 templates, sending over SMTP, and the local SMTP server that keeps what
it receives (the outbox a newcomer reads with `keel jobs outbox`)."""
