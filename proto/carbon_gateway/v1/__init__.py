"""Generated protobuf package: run `make proto` to regenerate."""
