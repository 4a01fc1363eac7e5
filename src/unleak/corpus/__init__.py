"""Conversations: the in-memory model, LLM-PC and chat-JSONL readers/writers, synthetic corpus, splits."""

from unleak.corpus.model import Conversation, PIIOccurrence, Turn

__all__ = ["Conversation", "PIIOccurrence", "Turn"]
