"""evalkit.embedded"""
