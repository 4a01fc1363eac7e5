"""OpenAI-compatible serving with guidance and adapter policies per traffic source."""
