"""`suite-agent fleet`: drive every agent on one broker at once, and gather their answers.

Imported only by that command; kombu or confluent-kafka (for kafka://) only once it talks to
the broker.
"""
