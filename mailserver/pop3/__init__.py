"""The POP3 server: session state machine, replies, byte-stuffing and Twisted glue."""
