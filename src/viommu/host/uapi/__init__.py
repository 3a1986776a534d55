"""ctypes mirrors of linux/vfio.h and linux/iommufd.h; the only code that calls ioctl."""
