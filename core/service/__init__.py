"""Service: the gRPC `Users` server, who may call it and for how long, and the file ledger it owns."""
