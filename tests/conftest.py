pytest_plugins = ["tuner.testing"]
