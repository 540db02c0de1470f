"""evalkit.tasks"""
