"""What a user implements: the task interface and the hooks on an update's path."""
