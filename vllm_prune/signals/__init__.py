"""What methods read from a model, measured inside it: the scout pass and the [CLS] row.

Pure torch over the model's modules (found by attribute, never by importing vLLM);
``observe`` turns a method's declared needs into its ``Context`` fields.
"""
