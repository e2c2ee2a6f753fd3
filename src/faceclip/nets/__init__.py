"""faceclip.nets"""
