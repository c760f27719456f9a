"""The loop: one job run start to finish, its checkpoints and result files, and the fault hooks tests use."""
