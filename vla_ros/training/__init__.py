"""Training pipeline of the policy: expert demos, joint encoder + head training, DAgger (`vla_train`)."""
