"""The SMTP server: session state machine, DATA decoder and Twisted glue."""
