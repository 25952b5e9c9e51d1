"""The preference trainer: pure losses, chat-template tokenisation, a plain accelerate loop."""
