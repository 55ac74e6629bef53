"""What talks to people: the command-line runner, microphone recognition and the HTTP server."""
