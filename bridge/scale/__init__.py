"""Scale-out mode: one core and any number of connection workers coordinated over NATS."""
