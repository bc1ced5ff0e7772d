"""Built-in logd plugins: one module per plugin, each registering one class."""
