"""faceclip.render"""
