"""The exchange edge: ccxt clients, the order executor and the position poller."""
