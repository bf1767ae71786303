"""gRPC edge: servicers that translate wire messages to domain calls and domain errors to statuses."""
