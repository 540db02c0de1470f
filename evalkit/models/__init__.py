"""evalkit.models"""
