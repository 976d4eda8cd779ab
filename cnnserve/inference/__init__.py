"""Generated protobuf modules of the Open Inference Protocol (package `inference`); see proto/cnnserve/inference."""
