"""HTTP ingress: API, image intake, stores and the application builder."""
