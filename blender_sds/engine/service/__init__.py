"""The engine as a service: the stdio worker the add-on starts, the TCP `serve`, and the sandbox that confines remote jobs."""
