"""faceclip.io"""
