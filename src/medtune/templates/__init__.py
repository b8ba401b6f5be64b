"""Chat templates shipped with medtune (`model.chat_template: builtin:NAME`)."""
