"""The voiceprint library: durable storage of enrolled speakers and their search index."""
