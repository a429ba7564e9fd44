"""Events: the bus the owner publishes to and the CloudEvents envelope the parts send."""
