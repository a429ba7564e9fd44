"""`suite-agent fleet`: drive every agent on one broker at once, and gather their answers.

Imported only by that command; kombu only once it talks to the broker.
"""
