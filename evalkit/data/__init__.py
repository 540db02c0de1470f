"""evalkit.data"""
