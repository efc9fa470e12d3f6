"""The teacher's prompt templates as package data (``*.md``); ``templates`` loads them."""
