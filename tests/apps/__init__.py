"""Small app modules that the end-to-end tests load with `--app tests.apps.<name>`."""
