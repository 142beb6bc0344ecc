"""The outbound queue: mail on its way to other servers, kept on disk until it is delivered,
bounced or deleted."""
