"""The application: what orchestrates the library for a user (commands, workflows, training from a recipe).

Nothing below this package (models, data, tasks, train, infer, interop, compress, explain) imports it.
"""
