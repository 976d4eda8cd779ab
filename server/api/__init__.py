"""The gRPC services: they translate messages and delegate; the serving logic lives one level up."""
