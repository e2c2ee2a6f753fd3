"""faceclip.losses"""
