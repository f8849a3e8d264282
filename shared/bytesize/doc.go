// Package bytesize reads and prints sizes in binary units (KiB, MiB, GiB):
// the image cache's size settings and caps, the CLI's tables and the bench
// report. They printed sizes with three copies of one loop; this is that
// loop once, in the two styles they print:
//
//	bytesize.IEC(1536)   // "1.5 KiB": messages and reports
//	bytesize.Short(1536) // "1.5Ki": table columns, as Kubernetes quantities read
//	bytesize.Parse("20Gi") // 21474836480: settings
package bytesize
