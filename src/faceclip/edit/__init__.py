"""faceclip.edit"""
