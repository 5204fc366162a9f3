"""qkvnas: architecture search over attention designs, measured on the target hardware."""
