"""Reading Flickr8k-style folders, vocabulary, tf.data pipelines and synthetic data.

Nothing in here imports JAX: the data room hands numpy arrays to the trainer.
"""
