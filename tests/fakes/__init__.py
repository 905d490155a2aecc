"""Local fakes of platform APIs that the real SDKs talk to over HTTP in tests."""
