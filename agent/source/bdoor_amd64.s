#include "textflag.h"

// func bdoor(ax, bx, cx, dx, si, di uint32) (oax, obx, ocx, odx, osi, odi uint32)
TEXT ·bdoor(SB), NOSPLIT|NOFRAME, $0-48
	MOVL ax+0(FP), AX
	MOVL bx+4(FP), BX
	MOVL cx+8(FP), CX
	MOVL dx+12(FP), DX
	MOVL si+16(FP), SI
	MOVL di+20(FP), DI
	INL
	MOVL AX, oax+24(FP)
	MOVL BX, obx+28(FP)
	MOVL CX, ocx+32(FP)
	MOVL DX, odx+36(FP)
	MOVL SI, osi+40(FP)
	MOVL DI, odi+44(FP)
	RET
