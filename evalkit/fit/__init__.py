"""evalkit.fit"""
